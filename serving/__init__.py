"""duplex.serving"""
