"""Copies each archived instance to every configured target, then declares the job archived."""
