"""lit test format for moec: ShTest, restricted to files under a folder named `test`.

Lives in a module of its own (not in the lit config) so lit's worker processes can unpickle it.
"""
import lit.formats


class CollectTestFolders(lit.formats.ShTest):
    def getTestsInDirectory(self, testSuite, path_in_suite, litConfig, localConfig):
        if "test" not in path_in_suite:
            return iter(())
        return super().getTestsInDirectory(testSuite, path_in_suite, litConfig, localConfig)
