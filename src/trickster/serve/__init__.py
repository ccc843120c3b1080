"""`trickster serve`: an OpenAI-compatible HTTP API over a run's checkpoints, and a playground page.

app.py (routes) -> choices.py (a request's choices as text) -> engine.py (the batched decoding
thread); streams.py shapes the answers (streamed as server-sent events, or collected whole), body.py
reads request bodies (size limit, deadline), models.py finds and loads the checkpoints, chat.py
renders chat templates, schemas.py holds the request models and OpenAI's answer and error shapes,
server.py binds and runs uvicorn with protocol.py's connections (deadlines on the headers and on
answers left unread, a chunk's declared size told to body.py), limits.py holds the defaults of
--max-loaded-models and --max-batch (importing nothing, for the CLI's --help).
"""
