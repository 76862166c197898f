"""The operator console: the pages a browser opens on the API's own origin (a sign-in page
on `/`, the live board, the OpenAPI browser on `/docs`), as static files plus pinned
front-end packages (Swagger UI, uPlot) that scripts/bootstrap.sh installs with `npm ci`
into node_modules. Nothing is fetched from elsewhere at run time; docs/console.md says why
the pages are plain modules without a build step.

The pages are public (they hold no data); everything they show comes from the API with the
signed-in user's token, through the same gate, roles and audit as any other client.
"""
