"""Local simulation: a server and one site-agent process per site on loopback."""
