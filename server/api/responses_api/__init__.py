"""OpenAI's Responses API (POST/GET/DELETE /v1/responses) on the chat pipeline."""
