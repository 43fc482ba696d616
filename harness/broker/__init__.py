"""The built-in MQTT broker (amqtt) with the registry's authentication and the device topic ACL."""
