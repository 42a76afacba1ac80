package meta

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func sample() Attrs {
	return Attrs{
		ID:   "0123456789abcdef",
		Mode: 0o640, UID: 1000, GID: 64055,
		Atime: time.Unix(1700000000, 1), Mtime: time.Unix(1700000001, 999999999), Ctime: time.Unix(-5, 0),
		Size: 1000001,
		Xattrs: map[string][]byte{"user.a": []byte("x"), "user.big": bytes.Repeat([]byte{0, 255, '='}, 1500), "user.empty": {},
			"trusted.libvirt.security.dac": []byte("+0:+0"), "trusted.libvirt.security.timestamp_dac": []byte("1796210362")},
	}
}

func TestTagsRoundTrip(t *testing.T) {
	for _, a := range []Attrs{sample(), {Size: -1}, {Mode: 07777, Size: 0}} {
		tags := EncodeTags(a)
		for _, tag := range tags {
			if len(tag) > MaxTagLen || !validTag(tag) {
				t.Fatalf("tag %q is not a valid LVM tag", tag)
			}
		}
		b, found, err := DecodeTags(append(tags, "libvirt", "other=x"))
		if err != nil || !found {
			t.Fatalf("decode %v: found=%v err=%v", tags, found, err)
		}
		if !a.Equal(b) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", b, a)
		}
	}
}

func TestDecodeTagsErrors(t *testing.T) {
	for _, tags := range [][]string{
		{"volfs.mode=999"}, {"volfs.owner=1"}, {"volfs.mtime=12"}, {"volfs.size=-2"},
		{"volfs.x=dXNlci5h:1:eA"}, {"volfs.x=!!:0:eA"},
	} {
		if _, _, err := DecodeTags(tags); err == nil {
			t.Errorf("DecodeTags(%q) accepted a malformed tag", tags)
		}
	}
	a, found, err := DecodeTags([]string{"foo", "volfs.managed"})
	if err != nil || found || a.Size != -1 {
		t.Errorf("foreign tags: %+v %v %v", a, found, err)
	}
}

func validTag(s string) bool {
	return strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+.-/=!:#&") == ""
}

func FuzzTags(f *testing.F) {
	f.Add(uint32(0o644), int64(5), "user.a", []byte("v"), int64(1700000000), []byte("volfs.mode=0644"))
	f.Add(uint32(0), int64(-1), "", []byte{}, int64(0), []byte("volfs.x=::"))
	f.Fuzz(func(t *testing.T, mode uint32, size int64, xn string, xv []byte, sec int64, raw []byte) {
		// Decoding arbitrary tags never panics.
		_, _, _ = DecodeTags(strings.Split(string(raw), ","))
		if size < -1 {
			size = -1
		}
		a := Attrs{Mode: mode & 07777, Size: size, Mtime: time.Unix(sec%(1<<40), 0)}
		if xn != "" {
			a.Xattrs = map[string][]byte{xn: xv}
		}
		tags := EncodeTags(a)
		for _, tag := range tags {
			if len(tag) > MaxTagLen || !validTag(tag) {
				t.Fatalf("invalid tag %q", tag)
			}
		}
		b, _, err := DecodeTags(tags)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Equal(b) {
			t.Fatalf("round trip: %+v != %+v", b, a)
		}
	})
}

func ExampleEncodeTags() {
	a := Attrs{Mode: 0o640, UID: 107, GID: 107, Mtime: time.Unix(1700000000, 5), Size: 1000001,
		Xattrs: map[string][]byte{"user.k": []byte("v")}}
	for _, t := range EncodeTags(a) {
		fmt.Println(t)
	}
	// Output:
	// volfs.mode=0640
	// volfs.mtime=1700000000.000000005
	// volfs.owner=107:107
	// volfs.size=1000001
	// volfs.x=dXNlci5r:0:dg
}
