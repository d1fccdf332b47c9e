"""The FranceConnect v2 client: the service as a FranceConnect "fournisseur de service"."""
