"""The inference engine evaluation and serving share: a Predictor over a trained model (encode once; score, top-k, beam search, explain), its exact scorers and the item trie."""
