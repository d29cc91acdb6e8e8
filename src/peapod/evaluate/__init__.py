"""peapod.evaluate"""
