"""Health watch over Bluetooth Low Energy: the pure GATT payload codec."""
