"""peapod.serve"""
