"""duplex.operator"""
