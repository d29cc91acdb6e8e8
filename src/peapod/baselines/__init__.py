"""peapod.baselines"""
