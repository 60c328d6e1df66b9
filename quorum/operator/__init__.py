"""The operator's command line over the admin API (`quorum runs | rounds | sites | tokens`)."""
