"""MiniVoice benchmark: SIPp load against a real gateway process, measured from /proc."""
