"""duplex.model"""
