"""Where a session's media goes besides its own WebRTC peer: one module per transport.

Each output is a sink (`base.Sink`) the session's player hands every 40 ms tick to, so every
output carries the same media clock: `rtmp.RtmpPush` (an RTMP push, encoded on its own thread),
`whip.WhipPush` (a WebRTC push to a WHIP endpoint, RFC 9725), `whep.WhepViewer` (a recvonly WebRTC peer; its RFC 9725-style signalling is the HTTP layer's `http/whep_api.py`). The server
session that push and pull outputs show is opened by `server_session`.
"""
