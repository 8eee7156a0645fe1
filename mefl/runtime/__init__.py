"""Flower's processes driven from Python: a private simulation SuperLink, a Ray cluster, a local
deployment of SuperLink and SuperNodes, their certificates, and clean process control."""
