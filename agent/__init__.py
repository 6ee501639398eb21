"""jobagent: a node agent that runs container jobs for a control-plane scheduler."""

__version__ = "0.1.0"
