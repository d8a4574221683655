"""What every command shares: argument types, exit statuses, the progress bar, the allocator setting.

Nothing here imports the rest of npvit, so every floor may use it.
"""
