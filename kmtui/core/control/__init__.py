"""The gate every state change passes, dual control, policy and the key lifecycle."""
