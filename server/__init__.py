"""Server side: strategies that wrap Flower strategies, and the ServerApp."""
