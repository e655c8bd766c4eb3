"""Where items come from: fetching feed bytes over HTTP and parsing them into items."""
