"""The site agent: joins the server, pulls tasks, trains locally, pushes updates."""
