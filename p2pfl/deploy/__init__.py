"""Running one organisation's node as a long-lived process (``p2pfl node``)."""
