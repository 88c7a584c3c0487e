"""The gossip-learning node (lifecycle, round loop) and its parts: the exchanges behind
one interface (sync and async gossip), the worker steps, the inbox, catch-up, peers."""
