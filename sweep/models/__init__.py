"""Networks (plain torch modules) and the LightningModule that trains them."""
