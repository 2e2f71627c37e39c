"""The API's routers, one per area: `pages` (the editor, its API docs, health), `canvas` (images, cut-outs,
token counts, bundles, the sprite library) and `jobs` (the generation queue). Each route reaches the app's
services through `services.Svc` and checks the token through `services.Auth`."""
