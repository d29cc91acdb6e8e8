"""peapod.model"""
