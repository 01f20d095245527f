"""Control plane: providers, translator, snapshot cache, ADS and policy stream servers."""
