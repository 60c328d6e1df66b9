"""The operator's dashboard: one page served by the admin app at `/dashboard`.

Every asset is a file of this package (`static/`: the page, its script and style, and uPlot,
vendored with its licence and provenance), so the page works on a network without internet
and needs no build step. The page itself is public; everything it shows comes from the admin
API with the bearer token the user signs in with, so it can show no more than the token may
read.
"""
