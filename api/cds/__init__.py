"""CDS Hooks 2.0.1: the service (routes.py: discovery, patient-view, order-select, order-sign,
feedback), JWT verification and replay protection (auth.py), the request, card and feedback shapes
(models.py), and cards built from the engine's assessment and order checks (cards.py)."""
