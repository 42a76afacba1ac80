package meta

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LVM tags may hold [A-Za-z0-9_+.-/=!:#&] and at most 1024 characters; the
// encoding below only produces those. Every volfs tag starts with TagPrefix,
// so tags set by other tools are left alone.
const (
	TagPrefix = "volfs."
	// MaxTagLen is LVM's limit on one tag.
	MaxTagLen = 1024
	// MaxXattrName and MaxXattrValue bound what a file may carry: the tags
	// of every volume share the VG's metadata area (1 MiB by default).
	MaxXattrName  = 255
	MaxXattrValue = 4096
	// MaxXattrTotal bounds the sum of all xattr names and values of a file.
	MaxXattrTotal = 16384
)

var b64 = base64.RawURLEncoding

// chunk is the payload of one xattr tag; leaves room for the prefix, the
// chunk number and the encoded name.
const chunk = 600

// EncodeTags returns the tags that record a. The output is sorted, so two
// equal Attrs give equal tag lists.
func EncodeTags(a Attrs) []string {
	tags := []string{
		fmt.Sprintf("%smode=%04o", TagPrefix, a.Mode&07777),
		fmt.Sprintf("%sowner=%d:%d", TagPrefix, a.UID, a.GID),
	}
	if a.ID != "" {
		tags = append(tags, TagPrefix+"id="+b64.EncodeToString([]byte(a.ID)))
	}
	for _, t := range []struct {
		k string
		v time.Time
	}{{"atime", a.Atime}, {"mtime", a.Mtime}, {"ctime", a.Ctime}} {
		if !t.v.IsZero() {
			tags = append(tags, fmt.Sprintf("%s%s=%d.%09d", TagPrefix, t.k, t.v.Unix(), t.v.Nanosecond()))
		}
	}
	if a.Size >= 0 {
		tags = append(tags, fmt.Sprintf("%ssize=%d", TagPrefix, a.Size))
	}
	for name, val := range a.Xattrs {
		n := b64.EncodeToString([]byte(name))
		v := b64.EncodeToString(val)
		i := 0
		for {
			part := v[:min(chunk, len(v))]
			v = v[len(part):]
			tags = append(tags, fmt.Sprintf("%sx=%s:%d:%s", TagPrefix, n, i, part))
			i++
			if v == "" {
				break
			}
		}
	}
	slices.Sort(tags)
	return tags
}

// IsTag reports whether tag is one that EncodeTags writes.
func IsTag(tag string) bool { return strings.HasPrefix(tag, TagPrefix) }

// DecodeTags rebuilds Attrs from a volume's tags, ignoring tags that are not
// volfs's. found is false when no volfs attribute tag was present (a volume
// volfs never touched). A malformed volfs tag is an error naming it.
func DecodeTags(tags []string) (a Attrs, found bool, err error) {
	a.Size = -1
	type part struct {
		i int
		s string
	}
	parts := map[string][]part{}
	for _, tag := range tags {
		rest, ok := strings.CutPrefix(tag, TagPrefix)
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			continue // a plain marker tag such as "volfs.managed"
		}
		found = true
		switch k {
		case "mode":
			m, perr := strconv.ParseUint(v, 8, 32)
			if perr != nil || m > 07777 {
				return a, found, fmt.Errorf("bad tag %q", tag)
			}
			a.Mode = uint32(m)
		case "owner":
			u, g, ok := strings.Cut(v, ":")
			uid, e1 := strconv.ParseUint(u, 10, 32)
			gid, e2 := strconv.ParseUint(g, 10, 32)
			if !ok || e1 != nil || e2 != nil {
				return a, found, fmt.Errorf("bad tag %q", tag)
			}
			a.UID, a.GID = uint32(uid), uint32(gid)
		case "atime", "mtime", "ctime":
			t, perr := parseTime(v)
			if perr != nil {
				return a, found, fmt.Errorf("bad tag %q: %v", tag, perr)
			}
			switch k {
			case "atime":
				a.Atime = t
			case "mtime":
				a.Mtime = t
			default:
				a.Ctime = t
			}
		case "id":
			id, derr := b64.DecodeString(v)
			if derr != nil || len(id) == 0 {
				return a, found, fmt.Errorf("bad tag %q", tag)
			}
			a.ID = string(id)
		case "size":
			s, perr := strconv.ParseInt(v, 10, 64)
			if perr != nil || s < 0 {
				return a, found, fmt.Errorf("bad tag %q", tag)
			}
			a.Size = s
		case "x":
			n, rest, ok1 := strings.Cut(v, ":")
			is, data, ok2 := strings.Cut(rest, ":")
			i, perr := strconv.Atoi(is)
			if !ok1 || !ok2 || perr != nil || i < 0 || i > MaxXattrTotal/chunk+1 {
				return a, found, fmt.Errorf("bad tag %q", tag)
			}
			parts[n] = append(parts[n], part{i, data})
		}
	}
	for n, ps := range parts {
		name, derr := b64.DecodeString(n)
		if derr != nil {
			return a, found, fmt.Errorf("bad xattr name in tags: %v", derr)
		}
		slices.SortFunc(ps, func(x, y part) int { return x.i - y.i })
		var sb strings.Builder
		for j, p := range ps {
			if p.i != j {
				return a, found, fmt.Errorf("xattr %q: chunk %d missing", name, j)
			}
			sb.WriteString(p.s)
		}
		val, derr := b64.DecodeString(sb.String())
		if derr != nil {
			return a, found, fmt.Errorf("xattr %q: %v", name, derr)
		}
		if a.Xattrs == nil {
			a.Xattrs = map[string][]byte{}
		}
		a.Xattrs[string(name)] = val
	}
	return a, found, nil
}

func parseTime(v string) (time.Time, error) {
	s, ns, ok := strings.Cut(v, ".")
	sec, e1 := strconv.ParseInt(s, 10, 64)
	nsec, e2 := strconv.ParseInt(ns, 10, 64)
	if !ok || e1 != nil || e2 != nil || len(ns) != 9 || nsec < 0 {
		return time.Time{}, fmt.Errorf("not SECONDS.NANOSECONDS")
	}
	return time.Unix(sec, nsec), nil
}
