"""The web console under /ui/: server-rendered pages, charts and forms."""
