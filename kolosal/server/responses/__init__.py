"""OpenAI's Responses API (create; get and delete stored responses), built on the chat
completion path."""
