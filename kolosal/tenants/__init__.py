"""Who is calling and what they may do: API keys with identities (``keys``) and their
request, token and concurrency limits (``limits``). Pure Python; the server installs them."""
