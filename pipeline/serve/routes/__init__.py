"""The app's routers, one per concern, each built around the app's ServeContext (pipeline/serve/context.py)."""
