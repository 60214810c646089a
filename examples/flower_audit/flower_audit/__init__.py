"""A small Flower app (ServerApp + ClientApp) whose run art-gifd captures and audits."""
