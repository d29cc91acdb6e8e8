"""peapod.train"""
