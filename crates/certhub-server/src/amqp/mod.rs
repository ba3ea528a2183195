//! AMQP 1.0 (issue 13), on fe2o3-amqp (docs/research/amqp: why that library). Built so far: the
//! grammar of the link addresses the Azure device, service and Event Hubs SDKs attach to
//! ([`address`]); the listener, CBS and the link handlers come on it.

pub mod address;
