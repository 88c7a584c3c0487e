"""The gossip-learning node and its parts (inbox, mixing)."""
