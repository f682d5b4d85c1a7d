"""What can be done with trained experts: list, import, mix, transfer, export, share on the Hub."""
