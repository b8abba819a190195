"""What every test folder shares: loopback fake servers, a real redis-server, helpers."""
