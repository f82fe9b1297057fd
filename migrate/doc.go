// Package migrate owns the transport of a live migration: the wire protocol
// between `cr migrate` (the sender, Migrate) and `cr serve` (the receiver,
// Serve), its authentication (mutual TLS, or a shared token proven by an
// HMAC bound to the TLS channel), the certificates `cr certs` creates, and
// the commit handshake that guarantees a migrated tree runs at exactly one
// place.
//
// The package does not dump or restore: the sender streams whatever its body
// callback writes, and the receiver extracts that stream with images.Extract
// into a staging directory and hands it to a Restorer. docs/wire-protocol.md
// specifies the protocol byte by byte.
package migrate
