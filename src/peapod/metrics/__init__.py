"""Metrics, each defined once: ranking (HR, NDCG, ranks) and text (BLEU, ROUGE, SacreBLEU, rouge-score, feature metrics)."""
