package meta

import "strings"

// Xattr namespaces volfs stores. user.* is for anyone the file's mode lets
// write; trusted.* is for privileged processes only (the kernel checks
// CAP_SYS_ADMIN before a trusted.* request reaches the server) and is where
// libvirt remembers an image's owner (trusted.libvirt.security.*) while a
// VM uses it. Both are kept alike: in LVM tags or state files, across
// remounts and renames.
const (
	UserPrefix    = "user."
	TrustedPrefix = "trusted."
)

// LayoutXattr is the trusted.* attribute that shows and sets an image's
// layout ("raid1 mirrors=1"). It is not stored: the volume's own layout is
// its value, and setting it creates or converts the volume accordingly.
const LayoutXattr = "trusted.volfs.layout"

// XattrStored reports whether name is in a namespace volfs stores. Names in
// other namespaces (security.*, system.*) are neither stored nor reported:
// their get, set and remove fail alike with ENOTSUP, so that a program
// that asks first (libvirt does) learns the truth before trying to set.
func XattrStored(name string) bool {
	return strings.HasPrefix(name, UserPrefix) || strings.HasPrefix(name, TrustedPrefix)
}

// XattrTrusted reports whether name is in the trusted.* namespace, which
// only callers with CAP_SYS_ADMIN may see.
func XattrTrusted(name string) bool { return strings.HasPrefix(name, TrustedPrefix) }

// XattrNameValid reports whether a name in a stored namespace has
// something after its prefix.
func XattrNameValid(name string) bool {
	for _, p := range []string{UserPrefix, TrustedPrefix} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			return rest != ""
		}
	}
	return false
}
