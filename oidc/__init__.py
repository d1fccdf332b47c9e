"""oidc package."""
