package kernel

// Entry is a kernel `kernel pull` can fetch by name.
type Entry struct {
	Name        string
	Package     string // Debian (meta)package resolved through the host's apt sources
	Description string
}

// DefaultName is the kernel `kernel pull` fetches without a name.
const DefaultName = "debian-cloud"

// Catalog lists the kernels known by name.
var Catalog = []Entry{
	{Name: DefaultName, Package: "linux-image-cloud-amd64",
		Description: "Debian cloud kernel (virtio as modules) from the host's apt sources"},
}

// Lookup returns the catalog entry for name.
func Lookup(name string) (Entry, bool) {
	for _, e := range Catalog {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}
