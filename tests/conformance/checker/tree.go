package main

// The file tree printed by every checker subcommand, in one format for all layer formats so that
// the Python side can compare it with the tree of the source tar (tests/harness/conformance.py
// computes the same format with tar_tree; keep both in sync).
//
// Normalisation rules:
//   - name: the archive path cleaned like the eStargz reader does (path.Clean("/"+name) without
//     the leading "/"), so "./etc/", "/etc" and "etc/" are all "etc". The layer root ("./", "/")
//     is named "." and appears only when the archive has an explicit entry for it.
//   - type: "reg", "dir", "symlink", "hardlink", "char", "block" or "fifo".
//   - hardlink entries carry only name, type and linkname: a hard link shares the inode of its
//     target, so its own header metadata is not observable through a reader. linkname is cleaned
//     like a name. Symlink linknames are kept verbatim.
//   - mode: the permission bits including setuid/setgid/sticky (mode & 07777); file-type bits
//     some old tar writers put in the mode field are dropped.
//   - uid, gid, uname, gname as stored in the archive.
//   - size and sha256 (hex of the content) only for "reg".
//   - devmajor and devminor only for "char" and "block".
//   - xattrs: PAX "SCHILY.xattr.<name>" records, values base64 (standard alphabet, padded);
//     always present (possibly empty) on non-hardlink entries.
//   - entries are sorted by name (byte order); when an archive holds the same name twice the later
//     entry wins, as it does when a tar is extracted.
//   - eStargz only: a TOC cannot say "no user name" for a uid that had a name on an earlier entry
//     (writers leave unchanged names out and readers fill them in from the previous entry with the
//     same uid; likewise group names by gid). The eStargz tree therefore shows inherited names, and
//     the tar side is compared after applying the same rule in archive order (inheritOwnerNames).

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
)

// TreeEntry is one file of a layer. Pointer fields are omitted from the JSON when they do not
// apply to the entry's type (a nil Size is "not a regular file", not "empty").
type TreeEntry struct {
	Name     string             `json:"name"`
	Type     string             `json:"type"`
	Mode     *int64             `json:"mode,omitempty"`
	UID      *int               `json:"uid,omitempty"`
	GID      *int               `json:"gid,omitempty"`
	Uname    *string            `json:"uname,omitempty"`
	Gname    *string            `json:"gname,omitempty"`
	Size     *int64             `json:"size,omitempty"`
	Sha256   *string            `json:"sha256,omitempty"`
	Linkname *string            `json:"linkname,omitempty"`
	Devmajor *int64             `json:"devmajor,omitempty"`
	Devminor *int64             `json:"devminor,omitempty"`
	Xattrs   *map[string]string `json:"xattrs,omitempty"` // a pointer so that an empty map is still printed
}

const permissionBits = 0o7777

// cleanName applies the name normalisation described at the top of this file.
func cleanName(name string) string {
	cleaned := strings.TrimPrefix(path.Clean("/"+name), "/")
	if cleaned == "" {
		return "."
	}
	return cleaned
}

// entryAttributes holds what a reader reports about one archive member before normalisation.
type entryAttributes struct {
	name, typ, linkname       string
	mode                      int64
	uid, gid                  int
	uname, gname              string
	size                      int64
	sha256Hex                 string
	devmajor, devminor        int64
	xattrsBase64              map[string]string
	regularFileContentIsKnown bool
}

func newTreeEntry(a entryAttributes) TreeEntry {
	entry := TreeEntry{Name: cleanName(a.name), Type: a.typ}
	if a.typ == "hardlink" {
		link := cleanName(a.linkname)
		entry.Linkname = &link
		return entry
	}
	mode := a.mode & permissionBits
	uid, gid, uname, gname := a.uid, a.gid, a.uname, a.gname
	entry.Mode, entry.UID, entry.GID, entry.Uname, entry.Gname = &mode, &uid, &gid, &uname, &gname
	xattrs := map[string]string{}
	maps.Copy(xattrs, a.xattrsBase64)
	entry.Xattrs = &xattrs
	switch a.typ {
	case "reg":
		size, sum := a.size, a.sha256Hex
		entry.Size, entry.Sha256 = &size, &sum
	case "symlink":
		link := a.linkname
		entry.Linkname = &link
	case "char", "block":
		major, minor := a.devmajor, a.devminor
		entry.Devmajor, entry.Devminor = &major, &minor
	}
	return entry
}

// sortedTree keeps the last entry for each name and sorts by name.
func sortedTree(entries []TreeEntry) []TreeEntry {
	byName := map[string]TreeEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	tree := slices.Collect(maps.Values(byName))
	slices.SortFunc(tree, func(a, b TreeEntry) int { return strings.Compare(a.Name, b.Name) })
	return tree
}

var tarTypeNames = map[byte]string{
	tar.TypeReg:     "reg",
	tar.TypeDir:     "dir",
	tar.TypeSymlink: "symlink",
	tar.TypeLink:    "hardlink",
	tar.TypeChar:    "char",
	tar.TypeBlock:   "block",
	tar.TypeFifo:    "fifo",
}

const paxXattrPrefix = "SCHILY.xattr."

func xattrsFromPAX(records map[string]string) map[string]string {
	xattrs := map[string]string{}
	for key, value := range records {
		if name, ok := strings.CutPrefix(key, paxXattrPrefix); ok {
			xattrs[name] = base64.StdEncoding.EncodeToString([]byte(value))
		}
	}
	return xattrs
}

// tarTreeOptions adjust treeFromTar to a format's reader.
type tarTreeOptions struct {
	skip              func(name string) bool // names (normalised) left out of the tree
	inheritOwnerNames bool                   // apply the eStargz owner-name inheritance (see top)
}

// treeFromTar reads a plain tar stream to its end (so a caller hashing the same stream sees all
// of it) and returns its tree.
func treeFromTar(stream io.Reader, options tarTreeOptions) ([]TreeEntry, error) {
	reader := tar.NewReader(stream)
	var entries []TreeEntry
	lastUname, lastGname := map[int]string{}, map[int]string{}
	for {
		header, err := reader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar stream: %w", err)
		}
		if options.inheritOwnerNames {
			header.Uname = inheritName(lastUname, header.Uid, header.Uname)
			header.Gname = inheritName(lastGname, header.Gid, header.Gname)
		}
		if options.skip != nil && options.skip(cleanName(header.Name)) {
			continue
		}
		if header.Typeflag == tar.TypeXGlobalHeader {
			continue // Go reports PAX global headers as entries; they are not files
		}
		typ, known := tarTypeNames[header.Typeflag]
		if !known {
			return nil, fmt.Errorf("tar entry %q has unsupported type %q", header.Name, header.Typeflag)
		}
		attrs := entryAttributes{
			name: header.Name, typ: typ, linkname: header.Linkname, mode: header.Mode,
			uid: header.Uid, gid: header.Gid, uname: header.Uname, gname: header.Gname,
			devmajor: header.Devmajor, devminor: header.Devminor, xattrsBase64: xattrsFromPAX(header.PAXRecords),
		}
		if typ == "reg" {
			hasher := sha256.New()
			size, err := io.Copy(hasher, reader)
			if err != nil {
				return nil, fmt.Errorf("reading content of %q: %w", header.Name, err)
			}
			attrs.size, attrs.sha256Hex = size, hex.EncodeToString(hasher.Sum(nil))
		}
		entries = append(entries, newTreeEntry(attrs))
	}
	// Drain the end-of-archive padding so the whole stream is consumed.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return nil, fmt.Errorf("draining tar stream: %w", err)
	}
	return sortedTree(entries), nil
}

// inheritName returns the name an eStargz reader shows for an entry owned by id.
func inheritName(last map[int]string, id int, name string) string {
	if name == "" {
		return last[id]
	}
	last[id] = name
	return name
}

// diffTrees describes the first few differences between two trees, or returns "" when equal.
func diffTrees(leftLabel string, left []TreeEntry, rightLabel string, right []TreeEntry) string {
	leftByName := map[string]TreeEntry{}
	for _, e := range left {
		leftByName[e.Name] = e
	}
	rightByName := map[string]TreeEntry{}
	for _, e := range right {
		rightByName[e.Name] = e
	}
	var problems []string
	for _, e := range left {
		other, ok := rightByName[e.Name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%q only in %s", e.Name, leftLabel))
		case mustJSON(e) != mustJSON(other):
			problems = append(problems, fmt.Sprintf("%q differs: %s %s vs %s %s",
				e.Name, leftLabel, mustJSON(e), rightLabel, mustJSON(other)))
		}
	}
	for _, e := range right {
		if _, ok := leftByName[e.Name]; !ok {
			problems = append(problems, fmt.Sprintf("%q only in %s", e.Name, rightLabel))
		}
	}
	if len(problems) == 0 {
		return ""
	}
	const shown = 5
	if len(problems) > shown {
		problems = append(problems[:shown], fmt.Sprintf("... and %d more", len(problems)-shown))
	}
	return strings.Join(problems, "; ")
}
