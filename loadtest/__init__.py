"""duplex.loadtest"""
