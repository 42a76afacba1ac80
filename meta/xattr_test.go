package meta

import "testing"

func TestXattrNamespaces(t *testing.T) {
	for _, c := range []struct {
		name                string
		stored, trusted, ok bool
	}{
		{"user.a", true, false, true},
		{"trusted.libvirt.security.dac", true, true, true},
		{"user.", true, false, false},
		{"trusted.", true, true, false},
		{"security.capability", false, false, false},
		{"system.posix_acl_access", false, false, false},
		{"users.a", false, false, false},
		{"", false, false, false},
	} {
		if got := XattrStored(c.name); got != c.stored {
			t.Errorf("XattrStored(%q) = %v", c.name, got)
		}
		if got := XattrTrusted(c.name); got != c.trusted {
			t.Errorf("XattrTrusted(%q) = %v", c.name, got)
		}
		if got := XattrNameValid(c.name); got != c.ok {
			t.Errorf("XattrNameValid(%q) = %v", c.name, got)
		}
	}
}
