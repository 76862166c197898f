// The console's pages besides the board, the order board and "my orders": each module
// registers itself with registerView() (shell.js) when imported here.
import "./household.js";
import "./city.js";
import "./fleet.js";
import "./admin.js";
