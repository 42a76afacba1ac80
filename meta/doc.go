// Package meta holds the per-file attributes that volumes do not have —
// mode, owner, times, the exact logical size, user.* and trusted.* xattrs —
// which xattr namespaces are stored, their compact encoding as LVM tags, and
// a state-file store for drivers without tags.
//
// meta never opens a block device; it encodes, decodes and persists what it
// is given.
package meta
